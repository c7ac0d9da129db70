"""Jobs: ids, folders and running a job in the foreground."""
