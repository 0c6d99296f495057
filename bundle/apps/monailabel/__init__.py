"""SegOne as a MONAI Label app: ``monailabel start_server --app bundle/apps/monailabel --studies DIR``."""
