"""The archiver's operations surface: run events, /health, /metrics, notifications, the HTTP
endpoints serving them, and the SIGHUP watcher. Nothing here archives a row."""
