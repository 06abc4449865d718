"""smirk_edge.runtimes"""
