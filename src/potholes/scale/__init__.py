"""Scale-out adapters: batch scoring of a registered model on Spark.
May import: inference (post-processing), data, errors.
"""
