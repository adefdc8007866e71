"""The opt-in semantic tier: near-duplicate answers for reworded requests, guarded so they are never wrong.

``partition`` decides which requests take part and what is compared; ``encoder`` embeds the
free text (numpy MiniLM); ``store`` keeps vectors in SQLite and searches a partition;
``guards`` are the named rules a match must pass; ``tier`` ties them together. Importing this
package imports none of them: with the tier off, numpy and the model are never loaded.
"""
