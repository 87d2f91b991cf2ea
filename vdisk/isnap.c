/* libvdisk — internal snapshots (vd_snapshot_* in vdisk.h): the checks
 * every format shares, then the driver's op (vd_driver.snapshot_*). */
#include <config.h>

#include <errno.h>

#include "vdisk/driver.h"

/* The device whose format holds the snapshots: through a filter, the
 * image below it. */
static struct vd_dev *
isnap_dev(struct vd_dev *dev)
{
  while (dev->below)
    dev = dev->below;
  return dev;
}

static int
isnap_check(struct vd_dev *dev, const char *name, bool write,
            const char *op)
{
  if (!dev)
    return vd_set_error(EINVAL, "vd_snapshot_%s: no device", op);
  if (!name)
    return vd_set_error(EINVAL, "%s: snapshot %s: no name", dev->path, op);
  if (write && dev->read_only)
    return vd_set_error(EROFS, "%s: snapshot %s: the image is open "
                        "read-only", dev->path, op);
  return 0;
}

static int
isnap_unsupported(struct vd_dev *dev, const char *op)
{
  if (dev->drv->snapshot_list)
    return vd_set_error(ENOTSUP, "%s: format '%s': snapshot %s is not "
                        "supported (snapshots are only listed and read)",
                        dev->path, dev->drv->name, op);
  return vd_set_error(ENOTSUP, "%s: format '%s' has no internal snapshots",
                      dev->path, dev->drv->name);
}

int
vd_snapshot_create(struct vd_dev *dev, const char *name)
{
  int r = isnap_check(dev, name, false, "create");
  if (r < 0)
    return r;
  struct vd_dev *img = isnap_dev(dev);
  if (!img->drv->snapshot_create)
    return isnap_unsupported(img, "create");
  if ((r = isnap_check(dev, name, true, "create")) < 0)
    return r;
  r = img->drv->snapshot_create(img, name);
  vd_dev_changed(img);
  vd_dev_changed(dev);
  return r;
}

int
vd_snapshot_delete(struct vd_dev *dev, const char *name)
{
  int r = isnap_check(dev, name, false, "delete");
  if (r < 0)
    return r;
  struct vd_dev *img = isnap_dev(dev);
  if (!img->drv->snapshot_delete)
    return isnap_unsupported(img, "delete");
  if ((r = isnap_check(dev, name, true, "delete")) < 0)
    return r;
  r = img->drv->snapshot_delete(img, name);
  vd_dev_changed(img);
  vd_dev_changed(dev);
  return r;
}

int
vd_snapshot_list(struct vd_dev *dev, struct vd_snapshot **list,
                 size_t *count)
{
  int r = isnap_check(dev, "", false, "list");
  if (r < 0)
    return r;
  if (!list || !count)
    return vd_set_error(EINVAL, "%s: snapshot list: nowhere to put it",
                        dev->path);
  dev = isnap_dev(dev);
  if (!dev->drv->snapshot_list)
    return isnap_unsupported(dev, "list");
  return dev->drv->snapshot_list(dev, list, count);
}
