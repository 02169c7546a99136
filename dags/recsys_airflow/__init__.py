"""What the recsys DAGs share: settings, the warehouse pool and lease, assets, Cosmos groups.

Not DAG files (`.airflowignore` keeps the DAG processor out): the DAG files import these
modules, which Airflow finds because it puts the DAGs folder on `sys.path`.
"""
