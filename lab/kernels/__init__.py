"""Which kernel L1 boots: Debian's (a suite or a pinned version), an Image a user built,
or one kvmlab builds from a source tree (`kvmlab kernel build`); and `kvmlab bisect`."""
