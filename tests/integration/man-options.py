#!/usr/bin/python3
"""A program's --help and its man page list the same options.

  man-options.py HELP.txt PAGE.1

Every long option of HELP's option list (lines starting with spaces and
a dash) must have a .TP entry in PAGE and every entry's options must be
in HELP, with the same short/long pairing and the same listed values
(--tls=on|require|off).  An entry may name several options ("--backing
=FILE, --backing-format=FMT").  Short-only options are not compared.
Prints each difference; exit 1 if there is one.
"""
import re
import sys

OPT = re.compile(r'(?:-(\w), )?--([a-z][-a-z]*)(?:\[?=([^ \],]+)\]?)?')


def entries(lines):
    out = {}
    for line in lines:
        pos = 0
        while True:
            m = OPT.match(line, pos)
            if not m:
                break
            vals = m.group(3) if m.group(3) and '|' in m.group(3) else None
            out[m.group(2)] = (m.group(1), vals)
            rest = re.match(r',\s*', line[m.end():])
            if not rest:
                break
            pos = m.end() + rest.end()
    return out


helped = entries(l.strip() for l in open(sys.argv[1])
                 if re.match(r'^  +-', l))
man, take = [], False
for l in open(sys.argv[2]):
    if take:
        l = l.replace('\\-', '-')
        l = re.sub(r'\\f[BIRP]', '', l)
        l = re.sub(r'\s*", "\s*', ', ', re.sub(r'^\.B[IR]? ', '', l))
        man.append(re.sub(r' ([\[=])', r'\1', l.strip(), count=1))
    take = l.startswith('.TP')
paged = entries(man)
bad = 0
for name in sorted(set(helped) | set(paged)):
    h, p = helped.get(name), paged.get(name)
    if h != p:
        print("--%s: --help %s, man page %s" % (name, h, p), file=sys.stderr)
        bad = 1
sys.exit(bad)
