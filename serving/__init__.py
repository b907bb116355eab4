"""Decision engine, actuators and HTTP API: online features -> forecast -> policy -> shield -> actuator."""
