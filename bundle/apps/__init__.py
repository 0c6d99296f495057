"""Applications serving the bundle: the MONAI Label app (:mod:`bundle.apps.monailabel`)."""
