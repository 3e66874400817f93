"""AWS access behind small adapters (DynamoDB, SQS). Domain code never imports boto3."""
