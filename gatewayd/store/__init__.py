"""store/: the database (tortoise-orm) and the one set of functions that change tickets."""
