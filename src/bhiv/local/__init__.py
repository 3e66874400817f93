"""The local runtime: embedded moto, HTTP servers for the Chalice apps, the stream poller."""
