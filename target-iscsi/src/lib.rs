//! iSCSI target (RFC 7143) with SCSI disk emulation. Under construction.
