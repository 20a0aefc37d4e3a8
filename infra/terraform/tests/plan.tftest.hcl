# `terraform test` (Terraform >= 1.7, run by check.sh): a mocked AWS provider, no credentials or network.

mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000" }
  }
  mock_resource "aws_s3_bucket" {
    defaults = {
      id  = "stlake-lake-123456789012-us-east-1"
      arn = "arn:aws:s3:::stlake-lake-123456789012-us-east-1"
    }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/stlake" }
  }
  mock_resource "aws_iam_instance_profile" {
    defaults = { arn = "arn:aws:iam::123456789012:instance-profile/stlake-training" }
  }
  mock_resource "aws_athena_workgroup" {
    defaults = { arn = "arn:aws:athena:us-east-1:123456789012:workgroup/stlake" }
  }
}

variables {
  training_ami_id = "ami-0123456789abcdef0"
}

# Offline: the mocked provider "applies" without AWS, so every expression of the configuration is
# evaluated with the default variables and with the VPC variant.
run "defaults" {
  command = apply

  assert {
    condition     = aws_s3_bucket.lake.bucket == "stlake-lake-123456789012-us-east-1" && aws_s3_bucket.logs.bucket == "stlake-logs-123456789012-us-east-1"
    error_message = "default bucket names: ${aws_s3_bucket.lake.bucket}, ${aws_s3_bucket.logs.bucket}"
  }
  assert {
    condition     = length(aws_glue_catalog_table.delta) == 8
    error_message = "eight Delta tables in Glue"
  }
  assert {
    condition     = aws_glue_catalog_table.delta["spots"].storage_descriptor[0].location == "s3://stlake-lake-123456789012-us-east-1/lake/spots"
    error_message = "spots location: ${aws_glue_catalog_table.delta["spots"].storage_descriptor[0].location}"
  }
  assert {
    condition     = length(aws_security_group.emr) == 0 && length(aws_security_group.training) == 0
    error_message = "no security groups without vpc_id"
  }
}

run "vpc" {
  command = apply
  variables {
    vpc_id             = "vpc-0123456789abcdef0"
    emr_subnet_ids     = ["subnet-01234567", "subnet-89abcdef"]
    training_subnet_id = "subnet-01234567"
  }
  assert {
    condition     = length(aws_security_group.emr) == 1 && length(aws_emrserverless_application.spark.network_configuration) == 1
    error_message = "EMR Serverless gets a VPC configuration with emr_subnet_ids"
  }
  assert {
    condition     = length(aws_security_group.training) == 1 && aws_launch_template.training.network_interfaces[0].subnet_id == "subnet-01234567"
    error_message = "training node SG / subnet"
  }
}

run "subnets_need_vpc" {
  command = plan

  variables {
    emr_subnet_ids = ["subnet-01234567"]
  }

  expect_failures = [aws_emrserverless_application.spark]
}
