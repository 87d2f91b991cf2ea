# VHD driver (vdisk/vhd*.c), its unit tests, integration tests, generator,
# fuzzer and vdtool commands.  Included from vdisk/Makefile.inc.
vdisk_libvdisk_internal_la_SOURCES += \
	vdisk/vhd.h \
	vdisk/vhd.c \
	vdisk/vhd-meta.c \
	vdisk/vhd-check.c \
	vdisk/vhd-manage.c \
	$(NULL)

check_PROGRAMS += tests/unit/test-vhd-meta tests/unit/test-vhd-alloc
TESTS += tests/unit/test-vhd-meta tests/unit/test-vhd-alloc
tests_unit_test_vhd_meta_SOURCES = tests/unit/test-vhd-meta.c tests/unit/cu.h
tests_unit_test_vhd_meta_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_vhd_meta_LDADD = $(UNIT_LDADD)
tests_unit_test_vhd_alloc_SOURCES = tests/unit/test-vhd-alloc.c tests/unit/cu.h
tests_unit_test_vhd_alloc_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_vhd_alloc_LDADD = $(UNIT_LDADD)
# Not a test: the writer vhd-crash.sh kills.
check_PROGRAMS += tests/unit/test-vhd-crash-writer
tests_unit_test_vhd_crash_writer_SOURCES = tests/unit/test-vhd-crash-writer.c
tests_unit_test_vhd_crash_writer_LDADD = vdisk/libvdisk.la -lpthread

TESTS += \
	tests/integration/vhd-qemu-img.sh \
	tests/integration/vhd-chain.sh \
	tests/integration/vhd-damage.sh \
	tests/integration/vhd-crash.sh \
	tests/integration/vhd-samples.sh \
	$(NULL)
EXTRA_DIST += tests/vhdgen/vhdgen.py

# Fuzzing: the harness over seeds in make check (standalone driver); with
# --enable-fuzzing and CC=clang also linked with libFuzzer.
check_PROGRAMS += tests/fuzz/fuzz-vhd
TESTS += tests/fuzz/fuzz-vhd.sh
EXTRA_DIST += tests/fuzz/fuzz-vhd.sh
tests_fuzz_fuzz_vhd_SOURCES = tests/fuzz/fuzz-vhd.c tests/fuzz/driver.c
tests_fuzz_fuzz_vhd_LDADD = vdisk/libvdisk-internal.la -lpthread
if ENABLE_FUZZING
noinst_PROGRAMS += tests/fuzz/libfuzzer-vhd
tests_fuzz_libfuzzer_vhd_SOURCES = tests/fuzz/fuzz-vhd.c
tests_fuzz_libfuzzer_vhd_CFLAGS = $(AM_CFLAGS) -fsanitize=fuzzer
tests_fuzz_libfuzzer_vhd_LDFLAGS = $(AM_LDFLAGS) -fsanitize=fuzzer
tests_fuzz_libfuzzer_vhd_LDADD = vdisk/libvdisk-internal.la -lpthread
endif
