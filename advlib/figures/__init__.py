"""The book's figures: one module per chapter (``advlib.figures.<chapter>``),
each a function per figure that draws it from the chapter's saved results and
returns the matplotlib figure; :mod:`.plane` holds what the 2-D figures share.
matplotlib is imported only here, so the rest of advlib never needs it."""
