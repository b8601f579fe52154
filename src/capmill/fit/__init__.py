"""The fit pass of stages that must see the whole input before streaming (bin edges, clusters)."""
