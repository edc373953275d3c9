"""Where bytes live: local directories and fsspec URLs (s3://, gs://, memory://) behind one interface."""
