"""The Kubernetes API client side: configuration, discovery, informers, leases, status."""
