"""Inventories and host selection; the public names are re-exported by ``sshfleet.inventory``.

Layout: ``_ranges`` (host ranges), ``_builder`` (var precedence -> HostSpec), one parser per format
(``_ini``, ``_yaml_format``, ``_plain``, ``_vars_dirs``), ``_patterns`` (selection), ``_core`` (Inventory).
"""
