-- Run by the postgres image on first start (compose.yaml).
CREATE DATABASE sagaflow_orchestrator;
CREATE DATABASE sagaflow_order;
CREATE DATABASE sagaflow_payment;
CREATE DATABASE sagaflow_inventory;
CREATE DATABASE sagaflow_flight;
CREATE DATABASE sagaflow_hotel;
CREATE DATABASE sagaflow_car;
CREATE DATABASE sagaflow_trip;
