"""How an update leaves the site: compressed (`compression`), DP-clipped (`dp_upload`), or as a masked ring vector (`secagg_upload`)."""
