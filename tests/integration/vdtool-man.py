#!/usr/bin/python3
"""vdtool's man page names every command and, for each, the options its
--help usage lines name (issue 15).

  vdtool-man.py VDTOOL PAGE.1

A command's entry in PAGE is the .TP whose first line starts with the
command's name; its options are those of that first line (the synopsis),
and for raid, whose synopsis only lists the subcommands, those of the
whole entry (which may name more: mdadm's own).  --help is left out.  Prints each difference; exit 1 if any.
"""
import re
import subprocess
import sys

vdtool, page = sys.argv[1], sys.argv[2]
lines = [l.replace('\\-', '-') for l in open(page).read().split('\n')]
heads, bodies = {}, {}
for i, l in enumerate(lines):
    if l.startswith('.TP') and i + 1 < len(lines):
        m = re.match(r'(?:\\fB|\.B )([a-z]+)', lines[i + 1])
        if m:
            body = []
            for b in lines[i + 1:]:
                if b.startswith('.TP') or b.startswith('.SH'):
                    break
                body.append(b)
            heads[m.group(1)] = re.sub(r'\\f[BIRP]', '', lines[i + 1])
            bodies[m.group(1)] = re.sub(r'\\f[BIRP]', '', '\n'.join(body))
tok = re.compile(r'(?<![\w-])(--?[A-Za-z][-A-Za-z]*)')


def run(*args):
    return subprocess.run([vdtool, *args], capture_output=True,
                          text=True).stdout


names = re.findall(r'^  ([a-z]+) ', run('--help'), re.M)
if len(names) < 10:
    sys.exit("vdtool --help lists only %d commands" % len(names))
bad = 0
for c in names:
    if c not in heads:
        print("%s: no entry in the man page" % c, file=sys.stderr)
        bad = 1
        continue
    usage = run(c, '--help').split('\n\n')[0]
    if c == 'raid':   # every subcommand's usage, against the whole entry
        usage = run(c, '--help').split('\n\n-q')[0]
    hs = set(tok.findall(usage)) - {'--help'}
    ms = set(tok.findall(bodies[c] if c == 'raid' else heads[c])) - {'--help'}
    if c == 'raid':   # the entry may also name mdadm's own options
        ms &= hs
    if hs != ms:
        print("%s: only in --help %s, only in the man page %s"
              % (c, sorted(hs - ms), sorted(ms - hs)), file=sys.stderr)
        bad = 1
sys.exit(bad)
