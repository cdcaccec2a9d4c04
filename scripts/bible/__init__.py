"""The parts of ``scripts/prepare_bible.py``, one job each.

* ``versification``: the KJV verse table and where each verse sits in a zText index;
* ``ztext``: SWORD's compressed verse files (``.bzs/.bzv/.bzz``), read with the stdlib;
* ``text``: OSIS markup -> plain text, and the Spanish module's typographic quirks;
* ``align``: pairing English and Spanish verses where their numbering differs.
"""


class PrepareError(RuntimeError):
    """A problem reported to the user as a one-line error."""
