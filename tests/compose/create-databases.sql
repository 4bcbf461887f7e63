-- Run by the postgres image on first start (compose.yaml).
CREATE DATABASE sagaflow_orchestrator;
CREATE DATABASE sagaflow_order;
CREATE DATABASE sagaflow_payment;
CREATE DATABASE sagaflow_inventory;
