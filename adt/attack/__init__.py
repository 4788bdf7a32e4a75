"""The l_inf attacks: the functions, one row of a table (:class:`~adt.attack.spec.AttackSpec`),
and the catalogue of the paper's protocol, where each attack's settings, rows and caption
sit together (:mod:`adt.attack.catalogue`)."""
