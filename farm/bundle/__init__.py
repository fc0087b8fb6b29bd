"""Scene bundles: a scene file plus every local file it needs, in one archive.

`povfarm submit scene.pov` plans and packs the bundle on the user's box; the
controller stores it by its hash; each node fetches it once, checks the hash,
keeps it unpacked in a `BundleCache` and renders in a private copy of it.

One module per side, so that each process imports only its own:
- `packing`: the client finds the files a scene needs and zips them deterministically;
- `checking`: the controller checks an upload's zip (names, entries, counts, sizes, end records),
  and the node a download's, without unpacking it;
- `cache`: the node downloads, unpacks and copies bundles;
- `rules`: what all three agree on: the limits, the hash that names a bundle, safe member names.
"""
