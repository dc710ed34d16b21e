"""PostgreSQL sessions: connections and their settings, and the watchdog that bounds every wait
on a silent server (issue 31)."""
