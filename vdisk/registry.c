/* libvdisk — the format registry and probing by magic bytes.
 * Adding a format: one extern declaration and one line in vd_drivers. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "driver.h"

extern const struct vd_driver vd_raw_driver;
extern const struct vd_driver vd_vdz_driver;
extern const struct vd_driver vd_vhd_driver;
extern const struct vd_driver vd_raid_driver;

static const struct vd_driver *const vd_drivers[] = {
  &vd_raw_driver,
  &vd_vdz_driver,
  &vd_vhd_driver,
  &vd_raid_driver,
  NULL
};

const struct vd_driver *
vd_find_driver(const char *name)
{
  for (const struct vd_driver *const *d = vd_drivers; *d; d++) {
    if (strcasecmp((*d)->name, name) == 0)
      return *d;
    for (const char *const *a = (*d)->aliases; a && *a; a++)
      if (strcasecmp(*a, name) == 0)
        return *d;
  }
  return NULL;
}

const char *const *
vd_format_names(void)
{
  static const char *names[sizeof vd_drivers / sizeof vd_drivers[0]];
  for (size_t i = 0; vd_drivers[i]; i++)
    names[i] = vd_drivers[i]->name;
  return names;
}

const struct vd_driver *
vd_probe_data(const struct vd_probe_data *pd, bool leaf_only)
{
  const struct vd_driver *best = NULL;
  int best_score = 0;
  for (const struct vd_driver *const *d = vd_drivers; *d; d++) {
    if (!(*d)->probe || (leaf_only && !(*d)->leaf))
      continue;
    int s = (*d)->probe(pd);
    if (s > best_score) {
      best_score = s;
      best = *d;
    }
  }
  return best;
}

const struct vd_driver *
vd_probe_path(const char *path, int *err)
{
  return vd_probe_path_leaf(path, false, err);
}

const struct vd_driver *
vd_probe_path_leaf(const char *path, bool leaf_only, int *err)
{
  uint8_t head[VD_PROBE_HEAD], tail[512];
  struct stat st = { 0 };
  struct vd_probe_data pd = { .head = head, .path = path };
  /* O_NONBLOCK: opening a FIFO for reading must not wait for a writer;
   * the type check below then refuses it. */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);

  if (fd == -1) {
    *err = vd_set_error(errno, "%s: cannot open for reading: %s", path,
                        strerror(errno));
    return NULL;
  }
  if (fstat(fd, &st) == -1 || (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))) {
    *err = S_ISDIR(st.st_mode)
      ? vd_set_error(EISDIR, "%s: is a directory, not an image", path)
      : vd_set_error(EINVAL, "%s: not a regular file or block device", path);
    close(fd);
    return NULL;
  }
  off_t end = lseek(fd, 0, SEEK_END);
  pd.file_size = end > 0 ? (uint64_t)end : 0;
  ssize_t n = pread(fd, head, sizeof head, 0);
  pd.head_len = n > 0 ? (size_t)n : 0;
  if (pd.file_size >= 512 &&
      pread(fd, tail, 512, (off_t)(pd.file_size - 512)) == 512)
    pd.tail = tail;
  close(fd);

  const struct vd_driver *best = vd_probe_data(&pd, leaf_only);
  if (!best)
    *err = vd_set_error(EINVAL, "%s: unknown image format", path);
  return best;
}
