-- One server, one database per component: the platform, MLflow's tracking store, Prefect's state.
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
