"""smirk_edge.training"""
