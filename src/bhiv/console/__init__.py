"""The local stack's read-only web console (`bhiv up --console-port`)."""
