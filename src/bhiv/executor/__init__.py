"""The Workflow Executor: runs workflows' actions and reports each execution to the Bucket."""
