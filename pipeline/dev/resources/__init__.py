"""Files the dev broker needs: the Maven pom that fetches Kafka and its log4j2 settings."""
