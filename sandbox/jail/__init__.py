"""What runs on the far side of the supervisor's socket: the fork server and container entry
point that start workers, the namespaces and seccomp filter that confine them, and the loop a
worker answers requests in. Nothing here decides a verdict; the supervisor never imports the loop."""
