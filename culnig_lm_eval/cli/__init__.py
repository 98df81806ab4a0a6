"""The ``culnig-*`` commands, one module each (``score``, ``sets``, ``experiment``, ``report``,
``models``, ``lape``, ``finetune``): argument parsing and a call into the library, with the shared
conventions of ``_common`` (one-line errors with exit status 2, clean Ctrl-C and SIGTERM)."""
