# vdz: LZ4-compressed, random-access, read-only images, and CRC-32C
# (included from vdisk/Makefile.inc).
vdisk_libvdisk_la_SOURCES += \
	vdisk/crc32c.h \
	vdisk/crc32c.c \
	$(NULL)

check_PROGRAMS += \
	tests/unit/test-vdz-crc32c \
	tests/unit/test-vdz-crc32c-portable \
	$(NULL)
TESTS += \
	tests/unit/test-vdz-crc32c \
	tests/unit/test-vdz-crc32c-portable \
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
