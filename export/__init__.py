"""smirk_edge.export"""
