"""The reports over stored runs: the seed table (report), its statistics (stats), the history of a
configuration (history), two runs or configurations side by side (compare, compare_sides) and the
SVG plots (plots). They read the store and print; they never write."""
