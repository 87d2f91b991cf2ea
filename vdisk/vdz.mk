# vdz: LZ4-compressed, random-access, read-only images, and CRC-32C
# (included from vdisk/Makefile.inc).
vdisk_libvdisk_internal_la_SOURCES += \
	vdisk/crc32c.h \
	vdisk/crc32c.c \
	vdisk/vdz.c \
	$(NULL)

check_PROGRAMS += \
	tests/unit/test-vdz-crc32c \
	tests/unit/test-vdz-crc32c-portable \
	tests/unit/test-vdz \
	$(NULL)
TESTS += \
	tests/unit/test-vdz-crc32c \
	tests/unit/test-vdz-crc32c-portable \
	tests/unit/test-vdz \
	tests/integration/vdz-roundtrip.sh \
	tests/integration/vdz-ext4.sh \
	tests/integration/vdz-bad-input.sh \
	tests/integration/vdz-frontends.sh \
	tests/integration/vdz-overlay.sh \
	tests/integration/vdz-blockdev.sh \
	$(NULL)
EXTRA_DIST += \
	tests/integration/vdz-roundtrip.sh \
	tests/integration/vdz-ext4.sh \
	tests/integration/vdz-bad-input.sh \
	tests/integration/vdz-frontends.sh \
	tests/integration/vdz-overlay.sh \
	tests/integration/vdz-blockdev.sh \
	$(NULL)

tests_unit_test_vdz_crc32c_SOURCES = tests/unit/test-vdz-crc32c.c
tests_unit_test_vdz_crc32c_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_vdz_crc32c_LDADD = $(UNIT_LDADD)
# The same tests on the table-driven code without the SSE4.2 path.
tests_unit_test_vdz_crc32c_portable_SOURCES = \
	tests/unit/test-vdz-crc32c.c vdisk/crc32c.c
tests_unit_test_vdz_crc32c_portable_CPPFLAGS = $(AM_CPPFLAGS) -DVD_CRC32C_PORTABLE
tests_unit_test_vdz_crc32c_portable_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_vdz_crc32c_portable_LDADD = $(CUNIT_LIBS) -lpthread
tests_unit_test_vdz_SOURCES = tests/unit/test-vdz.c
tests_unit_test_vdz_CFLAGS = $(UNIT_CFLAGS)
tests_unit_test_vdz_LDADD = $(UNIT_LDADD)

# Fuzz harness: in make check with the standalone driver over seeds that
# fuzz-vdz.sh makes with vdtool; with --enable-fuzzing also libFuzzer.
check_PROGRAMS += tests/fuzz/fuzz-vdz
TESTS += tests/fuzz/fuzz-vdz.sh
EXTRA_DIST += tests/fuzz/fuzz-vdz.sh
tests_fuzz_fuzz_vdz_SOURCES = tests/fuzz/fuzz-vdz.c tests/fuzz/driver.c
tests_fuzz_fuzz_vdz_CFLAGS = $(AM_CFLAGS) $(LZ4_CFLAGS)
tests_fuzz_fuzz_vdz_LDADD = vdisk/libvdisk-internal.la $(LZ4_LIBS) -lpthread
if ENABLE_FUZZING
noinst_PROGRAMS += tests/fuzz/libfuzzer-vdz
tests_fuzz_libfuzzer_vdz_SOURCES = tests/fuzz/fuzz-vdz.c
tests_fuzz_libfuzzer_vdz_CFLAGS = $(AM_CFLAGS) $(LZ4_CFLAGS) -fsanitize=fuzzer
tests_fuzz_libfuzzer_vdz_LDFLAGS = $(AM_LDFLAGS) -fsanitize=fuzzer
tests_fuzz_libfuzzer_vdz_LDADD = vdisk/libvdisk-internal.la $(LZ4_LIBS) -lpthread
endif
