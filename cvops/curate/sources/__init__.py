"""Readers: every source format -> a list of :class:`~.items.Item` (one per image).

Readers only parse; they never drop anything silently. What they cannot use
(a label file that does not parse, a label whose image is missing, a video the
decoder cannot open) goes to the :class:`~.ledger.Ledger` with its reason, and the
counts in the curate report add up.

Three rules hold for every format:

- **Every file is counted.** A reader marks the files it used and names the
  folders whose files must be accounted for; :func:`~.ledger.account_files` then gives
  every other file under them a row (unsupported type, OS metadata, nested
  archive, image no annotation lists, label file without an image).
- **Paths stay inside the dataset.** An image, label or list file whose real
  path (links resolved) is outside the source's :class:`~.paths.Scope` (the folder of
  ``data.path``, ``data.images_root``, an archive's extraction folder) is
  quarantined as "path outside the dataset root", unless
  ``data.allow_outside_paths`` is true.
- **Bad fields are rows.** A malformed entry (missing id, a width of ``"abc"``,
  a NaN coordinate) becomes a row naming the file and the field; only a file
  that cannot be read at all raises :class:`~cvops.errors.SourceError`.

One module per concern: :mod:`.items` (what a reader returns), :mod:`.fields`
(field values of annotation files), :mod:`.paths` (the dataset root and walking
it), :mod:`.ledger` (the rows, and every file accounted for), one module per
format (:mod:`.coco`, :mod:`.yolo`, :mod:`.voc`, :mod:`.images`, :mod:`.video`),
:mod:`.archives` (safe extraction), and :mod:`.reader`, which reads one
configured source (:func:`~cvops.curate.sources.reader.read_source`). The
configured sources themselves come from :func:`cvops.curate.inputs.iter_sources`.
"""
