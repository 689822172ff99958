"""Plots of every pipeline stage and the HTML report that embeds them (``make report``)."""
