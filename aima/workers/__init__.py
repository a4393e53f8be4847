"""arq workers: the settings a worker process runs with and the task functions it executes."""
