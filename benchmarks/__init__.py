"""smirk_edge.benchmarks"""
