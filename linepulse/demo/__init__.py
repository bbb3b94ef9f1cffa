"""The packaged demo plant (plant.yaml), read by `linepulse demo`."""
