{#- Models name their schema after the model spec (e.g. bike_demand), so their
    tables sit next to the Dagster-managed raw and features tables. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}{{ target.schema }}{%- else -%}{{ custom_schema_name | trim }}{%- endif -%}
{%- endmacro %}
