//! Software RAID5 over block devices. Under construction.
