DROP TABLE create_requests;
