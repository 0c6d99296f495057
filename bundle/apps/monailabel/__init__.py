"""SegOne as a MONAI Label app: ``monailabel start_server --app bundle/monailabel_app --studies DIR``."""
