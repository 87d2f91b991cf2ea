/* libvdisk — CRC-32C (Castagnoli), internal.
 *
 * Polynomial 0x1EDC6F41 (reflected 0x82F63B78), initial value and final
 * XOR 0xFFFFFFFF, as in iSCSI (RFC 3720), ext4, btrfs and SSE4.2's crc32
 * instruction.  The check value of "123456789" is 0xE3069283.
 *
 * Chaining: start with CRC = 0 and pass the previous result to continue,
 * so vd_crc32c(vd_crc32c(0, a, n), b, m) equals the CRC of a followed
 * by b.  Thread-safe; uses the SSE4.2 instruction when the CPU has it,
 * and carry-less multiplication (AVX-512 VPCLMULQDQ) on buffers of 512
 * bytes or more when it has that too.
 */
#ifndef VDISK_CRC32C_H
#define VDISK_CRC32C_H

#include <stddef.h>
#include <stdint.h>

uint32_t vd_crc32c(uint32_t crc, const void *buf, size_t len);

#endif /* VDISK_CRC32C_H */
