"""Generated data: a SynFundus-layout corpus with Chinese captions, MESSIDOR-2/FIVES/REFUGE-layout
evaluation sets from another simulated camera (generator; renderer, which composes anatomy, vessels,
lesions and camera on a canvas; captions), and in-memory toy sets
for tests and demos (toys). Nothing in the real pipeline depends on this package.
"""
