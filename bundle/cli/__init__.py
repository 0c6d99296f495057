"""The user tools behind the console entry points in ``pyproject.toml`` (``[project.scripts]``), one module each.

- ``segone-dicom-batch`` (:mod:`bundle.cli.dicom_batch`): a tree of DICOM studies to one checked DICOM SEG per series;
- ``segone-demo-data`` (:mod:`bundle.cli.demo_data`): the embedded demo data set (synthetic phantoms, MSD layout);
- ``segone-fill-teacher-cache`` (:mod:`bundle.cli.fill_teacher_cache`): the SAM2 teacher cache, ahead of training;
- ``segone-convert-hdf5`` (:mod:`bundle.cli.convert_hdf5`): a suite data set published as HDF5 (ACDC, left atrium)
  to an MSD folder.

Each module's ``main(argv=None)`` parses its options (``argv=None``: the command line), writes its result to stdout and
returns the exit status. ``scripts/dicom_batch_infer.py``, ``scripts/make_demo_data.py``,
``scripts/fill_teacher_cache.py`` and ``scripts/convert_hdf5.py`` are the same commands; ``--set KEY=VALUE`` options
are parsed by :func:`bundle.utils.cli.parse_overrides`.
"""
